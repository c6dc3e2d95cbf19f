"""The REST service (FastAPI). Not built yet: it arrives with the service issue.

It will import ``metalic`` (the library) and the storage layer; the library never imports it.
"""

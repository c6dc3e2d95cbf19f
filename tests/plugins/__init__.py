"""Families loaded through METALIC_PLUGINS by the service tests (in the test process and in workers)."""

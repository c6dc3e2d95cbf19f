"""The service's workers: trainer actors on Ray (one per GPU, or CPU actors), the executors that
hold them, the dispatcher that packs queued tasks into batches, and the campaign stepper.

``workers.batch`` (the batch function) does not need Ray; the Ray parts import it lazily.
"""

"""The worker process (claim a training job, train, report). Not built yet: it arrives with the
service issue. Until then, ``metalic.pinn.trainer.train_batch`` is the training entry point."""

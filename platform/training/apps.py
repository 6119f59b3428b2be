from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"

    def ready(self) -> None:
        # Register the Celery tasks in every process (web, worker, tests): the services
        # enqueue them by name (training/queue.py) and never import training.tasks.
        from training import tasks  # noqa: F401

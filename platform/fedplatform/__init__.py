"""The control plane's Django project. The Celery app is loaded with Django."""

from fedplatform.celery import app as celery_app

__all__ = ["celery_app"]

"""The federated-learning library shared by the control plane and the silo agent.

Pure mathematics on arrays, the safetensors wire format, model adapters, local data
handling and a one-process simulator. It never imports Django, Celery or HTTP clients.
"""

__version__ = "0.1.0"

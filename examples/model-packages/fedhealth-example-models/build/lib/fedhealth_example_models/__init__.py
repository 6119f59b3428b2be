"""Example models for fedhealth, registered under the ``fedhealth.models`` entry points."""

"""Experiment trackers (issue 17): one class per spec `integrations` kind, all behind
base.Tracker; workers.tracking picks them from its registry and owns retries."""

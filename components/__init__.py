"""Pulumi components of the Celery-on-Redis stack and the settings model that drives them."""

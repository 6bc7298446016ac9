"""wiretask against a real Celery 5.7 worker and client over a real Redis (both directions)."""

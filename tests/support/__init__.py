"""Helpers of the tests: running DAGs, the local stack's control API, S3 objects, datasets, AWS call records."""

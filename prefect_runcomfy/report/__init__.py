"""What people and Prefect see of a run: artifacts, the review page, previews.

Reporting reads rows' records and manifests; it never changes a row's outcome.
"""

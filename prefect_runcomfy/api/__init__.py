"""The RunComfy Model API: an async client, its models and its errors. No Prefect here.

`client` speaks HTTP (submit, status, result, cancel, catalog); `models` holds the request and
answer shapes and the status vocabulary; `exceptions` the whole error tree; `backoff` the one
retry policy; `downloads` fetches output files (never with the API token).
"""

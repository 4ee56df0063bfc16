"""The web console: triage incidents, see why they fired, tune detections and suppress.

`create_app` (app.py) builds the FastAPI application that `exfilwatch ui` serves alone and
`exfilwatch serve` mounts; users and logins are in users.py, chart specs in charts.py.
"""

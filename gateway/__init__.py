"""Wallaby Gateway: a safe, fast front door for CouchDB."""

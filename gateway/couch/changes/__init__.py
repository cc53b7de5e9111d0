"""CouchDB ``_changes`` feeds: parsing, reconnecting feeds and shared subscriptions."""

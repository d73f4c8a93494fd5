"""Notifications and tickets: events a person must act on, sent to webhooks, chat and ITSM."""

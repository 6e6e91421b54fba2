"""Data-subject rights over what the API side holds (the CRM's own in :mod:`crm.privacy`)."""

from api.privacy.service import erase_contact, export_contact

__all__ = ["erase_contact", "export_contact"]

"""Screening, sender verification, the reply policy, Jinja2 reply templates
(en, es), tickets and the triage queue, mail-loop protection.  Pure logic
over parsed messages plus database access through ``models``."""

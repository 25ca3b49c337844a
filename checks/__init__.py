"""The compliance checks auditors read: one package per table of the operations page."""

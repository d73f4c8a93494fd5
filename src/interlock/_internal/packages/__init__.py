"""Signed work packages: what one agent may do in one run, issued ahead and verified offline."""

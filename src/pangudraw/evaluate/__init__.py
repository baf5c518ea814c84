"""Offline quality metrics and benchmark runners."""

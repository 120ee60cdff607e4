"""Plug-ins that run conspo objectives on existing training engines."""

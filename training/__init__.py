"""Offline work on the models: training DeViSE heads, evaluating joint spaces and zero-shot search, and
calibrating the ConSE settings the server ships with. Nothing here runs in the server.
"""

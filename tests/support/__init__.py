"""Helpers shared by test files of several kinds (numpy references, tiny
members and runs, reliability cases); conftest.py keeps the fixtures."""

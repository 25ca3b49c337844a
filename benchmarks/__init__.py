"""Benchmarks of caracal-restore (not part of ``tox -e tests``): see benchmarks/README.md."""

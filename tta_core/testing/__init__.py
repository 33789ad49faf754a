"""Test helpers for tta and its plugins: the conformance kit (:mod:`.conformance`)."""

"""Test helpers shared by rayprof's suites: sample media, free ports, local stream servers."""

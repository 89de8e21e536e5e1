"""Partner emulators: real servers on 127.0.0.1 used by the demo and the tests."""

"""What both halves of ortserve share: the model store, the per-model settings, durations, devices and the
encoder's forward pass. It imports neither the server nor the conversion package; both import it."""

"""Real-engine tests: the real Pulumi CLI and provider against a real control plane."""

"""brokerctl: the project's command line (render manifests offline, show settings, check a broker)."""

"""brokerctl: the project's command line.

It renders manifests offline, shows settings and checks a broker.
"""

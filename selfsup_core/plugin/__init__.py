"""The plugin contract: hook specifications, markers, the plugin host and the registries."""

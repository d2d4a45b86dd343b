"""The user's configuration, validated: settings (flags, environment, files) and a fleet's inventory."""

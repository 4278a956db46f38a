"""The Ray Serve application: one deployment per file, wired by :func:`services.app.build_app`."""

"""GIMP-side client of the engine daemon: protocol and websocket client, standard library only."""

"""The tray app's pure parts: icon rendering, the menu model and notifications.

Nothing here imports pystray at module level (importing it picks a display backend and
fails on a headless machine); `menu.to_pystray` imports it when the tray app calls it.
"""

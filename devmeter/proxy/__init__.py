"""The mitmproxy side: the Meter addon and the proxy process."""

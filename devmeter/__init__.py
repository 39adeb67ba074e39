"""devmeter: meter every LLM API call your dev tools make."""

__version__ = "0.1.0"

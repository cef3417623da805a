"""Local aiohttp servers speaking each CRM vendor's documented wire format, for tests."""

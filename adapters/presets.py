"""Column-mapping presets for platforms whose exports partners send unchanged.

A preset lists, per canonical column, the export's column names to try in order. A partner's own
``columns`` always win over the preset; canonical names matched case-insensitively come last.
"""

from __future__ import annotations

from typing import Mapping

PRESETS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "shopify": {
        "sku": ("Variant SKU",), "name": ("Title",), "description": ("Body (HTML)",),
        "price": ("Variant Price",), "stock": ("Variant Inventory Qty",), "active": ("Published",),
        "brand": ("Vendor",), "category": ("Product Category", "Type"), "gtin": ("Variant Barcode",),
        "image_url": ("Image Src",),
    },
    "woocommerce": {
        "sku": ("SKU",), "name": ("Name",), "description": ("Description", "Short description"),
        "price": ("Regular price",), "stock": ("Stock",), "brand": ("Brands",),
        "category": ("Categories",), "image_url": ("Images",), "url": ("External URL",),
    },
    "magento": {
        "sku": ("sku",), "name": ("name",), "description": ("description",), "price": ("price",),
        "stock": ("qty",), "category": ("categories", "category"), "image_url": ("base_image",),
        "url": ("url_key",),
    },
    "akeneo": {
        "sku": ("sku",), "name": ("name", "name-en_US"), "active": ("enabled",), "brand": ("brand",),
        "description": ("description-en_US-ecommerce", "description"), "gtin": ("ean", "upc"),
        "price": ("price-USD", "price"), "image_url": ("image",),
    },
    "google-retail": {
        "sku": ("id",), "name": ("title",), "description": ("description",),
        "price": ("priceInfo.price",), "currency": ("priceInfo.currencyCode",),
        "stock": ("availableQuantity",), "brand": ("brands",), "category": ("categories",),
        "url": ("uri",),
    },
}

"""Deterministic, Slice-shaped sample data, generated per user (no database tables).

Everything is derived from the user's primary key, so a user always sees the same
orders, items, shipments and mailboxes, and two users never share one. All dates are
relative to the fixed ``ANCHOR`` so the data does not drift between runs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

ANCHOR = datetime(2025, 6, 30, 18, 0, tzinfo=timezone.utc)
ORDER_COUNT = 25
HISTORY_DAYS = 720

COLLECTIONS = ("orders", "items", "shipments", "mailboxes")

SHIPMENT_STATUSES: dict[int, str] = {
    0: "PENDING",
    1: "IN_TRANSIT",
    2: "OUT_FOR_DELIVERY",
    3: "DELIVERED",
    4: "EXCEPTION",
    5: "UNKNOWN",
}

# key -> (id, display name)
CATEGORIES: dict[str, tuple[int, str]] = {
    "electronics": (1001, "Electronics"),
    "books": (1002, "Books"),
    "clothing": (1003, "Clothing & Shoes"),
    "home": (1004, "Home & Kitchen"),
    "toys": (1005, "Toys & Games"),
    "grocery": (1006, "Grocery"),
    "beauty": (1007, "Health & Beauty"),
    "outdoors": (1008, "Sports & Outdoors"),
    "apps": (1009, "Apps & Software"),
    "music": (1010, "Music & Movies"),
}

# category key -> (description, lowest price, highest price), prices in cents
PRODUCTS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "electronics": (
        ("Wireless Noise Cancelling Headphones", 9999, 34999),
        ("USB-C Charging Cable, 6 ft (2-Pack)", 899, 1999),
        ("27-inch 4K Monitor", 22999, 44999),
        ("Mechanical Keyboard, Brown Switches", 5999, 12999),
        ("Portable SSD 1TB", 7999, 14999),
    ),
    "books": (
        ("The Pragmatic Programmer, 20th Anniversary Edition", 3299, 4999),
        ("Project Hail Mary (Paperback)", 1099, 1899),
        ("Salt, Fat, Acid, Heat", 2199, 3599),
        ("The Very Hungry Caterpillar (Board Book)", 599, 999),
    ),
    "clothing": (
        ("Men's Merino Wool Crew Socks, 3 Pairs", 1999, 3499),
        ("Women's Classic Rain Jacket", 5999, 12999),
        ("Unisex Canvas Low-Top Sneakers", 4499, 6999),
        ("Organic Cotton T-Shirt", 1299, 2999),
    ),
    "home": (
        ("Cast Iron Skillet, 12 inch", 2499, 4999),
        ("Pour-Over Coffee Maker", 2199, 4499),
        ("Bamboo Cutting Board Set", 1899, 3499),
        ("Linen Duvet Cover, Queen", 8999, 17999),
    ),
    "toys": (
        ("1000-Piece Jigsaw Puzzle", 1499, 2499),
        ("Wooden Train Set", 3999, 7999),
        ("Strategy Board Game", 2999, 5999),
    ),
    "grocery": (
        ("Whole Bean Coffee, 2 lb", 1599, 2999),
        ("Extra Virgin Olive Oil, 1 L", 1299, 2499),
        ("Sparkling Water, 24 Pack", 899, 1599),
    ),
    "beauty": (
        ("SPF 50 Sunscreen Lotion", 999, 2499),
        ("Electric Toothbrush", 3999, 9999),
        ("Unscented Moisturizer", 1299, 2999),
    ),
    "outdoors": (
        ("Insulated Water Bottle, 32 oz", 2499, 4499),
        ("Yoga Mat", 2999, 7999),
        ("Two-Person Backpacking Tent", 14999, 29999),
    ),
    "apps": (
        ("Photo Editor Pro (Annual Subscription)", 2999, 5999),
        ("Cloud Storage 200 GB (Monthly)", 299, 299),
        ("Puzzle Quest Game", 499, 999),
    ),
    "music": (
        ("Album: Live at the Fillmore", 999, 1299),
        ("Movie Rental: HD", 399, 599),
        ("Audiobook: A Brief History of Time", 1499, 2499),
    ),
}


@dataclass(frozen=True)
class Merchant:
    id: int
    name: str
    slug: str
    categories: tuple[str, ...]
    order_number_pattern: str  # each "#" becomes a digit
    digital: bool = False


MERCHANTS: tuple[Merchant, ...] = (
    Merchant(
        2001,
        "Amazon.com",
        "amazon",
        ("electronics", "books", "home", "toys", "grocery", "beauty"),
        "1##-#######-#######",
    ),
    Merchant(2002, "Target", "target", ("home", "toys", "grocery", "beauty"), "90##########"),
    Merchant(2003, "Best Buy", "bestbuy", ("electronics",), "BBY01-8##########"),
    Merchant(2004, "Zappos", "zappos", ("clothing",), "########"),
    Merchant(2005, "REI", "rei", ("outdoors", "clothing"), "A#########"),
    Merchant(2006, "Etsy", "etsy", ("home", "toys", "clothing"), "#########"),
    Merchant(2007, "Apple", "apple", ("apps", "music"), "MK#######", digital=True),
    Merchant(2008, "Barnes & Noble", "barnesandnoble", ("books",), "########"),
)

PHYSICAL_MERCHANTS = tuple(merchant for merchant in MERCHANTS if not merchant.digital)
RECENT_ORDERS = frozenset({2, 3, 4})
SHIPPERS: tuple[str, ...] = ("UPS", "USPS", "FedEx", "DHL")
TAX_RATES: tuple[float, ...] = (0.0, 0.0625, 0.07, 0.0725, 0.08, 0.0875, 0.095)
SHIPPING_COSTS: tuple[int, ...] = (0, 0, 0, 499, 599, 799, 999)
FIRST_NAMES = ("Alex", "Jordan", "Sam", "Taylor", "Morgan", "Casey", "Riley", "Jamie")
LAST_NAMES = ("Rivera", "Chen", "Okafor", "Novak", "Larsen", "Patel", "Moreau", "Kim")


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, as every Slice timestamp is."""
    return int(moment.timestamp() * 1000)


@dataclass
class Dataset:
    """One user's sample data; records are JSON-ready dicts with absolute hrefs."""

    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    items: dict[int, dict[str, Any]] = field(default_factory=dict)
    shipments: dict[int, dict[str, Any]] = field(default_factory=dict)
    mailboxes: dict[int, dict[str, Any]] = field(default_factory=dict)

    def collection(self, kind: str) -> dict[int, dict[str, Any]]:
        if kind not in COLLECTIONS:
            raise KeyError(kind)
        return getattr(self, kind)

    def newest_first(self, kind: str) -> list[dict[str, Any]]:
        # hrefs break updateTime ties so paging is stable.
        records = self.collection(kind).values()
        return sorted(records, key=lambda r: (r["updateTime"], r["href"]), reverse=True)


class _Ids:
    """Unique signed 64-bit ids, like Slice's (about half of them negative)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._seen: set[int] = set()

    def new(self, negative: bool | None = None) -> int:
        while True:
            value = self._rng.getrandbits(63) or 1
            if negative is None:
                negative = self._rng.random() < 0.5
            value = -value if negative else value
            if value not in self._seen:
                self._seen.add(value)
                return value


def _digits(rng: random.Random, pattern: str) -> str:
    return "".join(str(rng.randint(0, 9)) if char == "#" else char for char in pattern)


def _tracking_number(rng: random.Random, shipper: str) -> str:
    patterns = {
        "UPS": "1Z###########A###",
        "USPS": "9400##################",
        "FedEx": "############",
        "DHL": "##########",
    }
    return _digits(rng, patterns[shipper])


def user_email(user: Any) -> str:
    email = (getattr(user, "email", "") or "").strip()
    if email:
        return email
    username = user.get_username()
    return username if "@" in username else f"{username}@example.com"


def build_user(user: Any, api_root: str) -> dict[str, Any]:
    """The /users/self record for a Django user."""
    rng = random.Random(f"slice-sandbox:user:{user.pk}")
    email = user_email(user)
    created = getattr(user, "date_joined", None) or ANCHOR
    updated = max(created, getattr(user, "last_login", None) or created)
    return {
        "firstName": user.first_name or rng.choice(FIRST_NAMES),
        "lastName": user.last_name or rng.choice(LAST_NAMES),
        "userName": None,
        "userEmail": email,
        "linkedAccounts": [{"accountType": "AMAZON", "userName": email}],
        "mailboxes": [{"href": m["href"]} for m in _mailboxes(user, api_root)],
        "href": f"{api_root}/users/self",
        "createTime": to_ms(created),
        "updateTime": to_ms(updated),
    }


def _mailboxes(user: Any, api_root: str) -> list[dict[str, Any]]:
    rng = random.Random(f"slice-sandbox:mailboxes:{user.pk}")
    ids = _Ids(rng)
    email = user_email(user)
    local = email.split("@", 1)[0]
    boxes = [(email, "GMAIL")]
    if rng.random() < 0.5:
        boxes.append((f"{local}.shopping@yahoo.example", "YAHOO"))
    records = []
    for address, mailbox_type in boxes:
        mailbox_id = ids.new()
        records.append(
            {
                "email": address,
                "mailboxType": mailbox_type,
                "status": "ACTIVE",
                "href": f"{api_root}/mailboxes/{mailbox_id}",
                "updateTime": to_ms(ANCHOR - timedelta(hours=rng.randint(1, 48))),
            }
        )
    return records


def _split(sequence: list[Any], parts: int) -> Iterator[list[Any]]:
    size = -(-len(sequence) // parts)
    for start in range(0, len(sequence), size):
        yield sequence[start : start + size]


def _shipment_state(rng: random.Random, days_ago: int) -> int:
    if days_ago <= 1:
        return rng.choice((0, 0, 1))
    if days_ago <= 4:
        return rng.choice((1, 1, 2))
    roll = rng.random()
    return 3 if roll < 0.9 else (4 if roll < 0.95 else 5)


def build_dataset(user: Any, api_root: str) -> Dataset:
    """All purchase data for ``user``; hrefs start with ``api_root`` (".../api/v1")."""
    rng = random.Random(f"slice-sandbox:orders:{user.pk}")
    ids = _Ids(rng)
    dataset = Dataset()
    for mailbox in _mailboxes(user, api_root):
        dataset.mailboxes[int(mailbox["href"].rsplit("/", 1)[1])] = mailbox
    mailbox_href = next(iter(dataset.mailboxes.values()))["href"]

    for index in range(ORDER_COUNT):
        # Orders 0 and 1 pin both signs, whatever the seed.
        order_id = ids.new(negative={0: True, 1: False}.get(index))
        order_href = f"{api_root}/orders/{order_id}"
        # A few recent physical orders, so pending and in-transit shipments exist too.
        recent = index in RECENT_ORDERS
        merchant = rng.choice(PHYSICAL_MERCHANTS if recent else MERCHANTS)
        days_ago = rng.randint(0, 4) if recent else rng.randint(0, HISTORY_DAYS)
        ordered_at = ANCHOR - timedelta(days=days_ago, minutes=rng.randint(0, 24 * 60 - 1))
        changes = [ordered_at + timedelta(minutes=5)]

        item_records: list[tuple[int, dict[str, Any]]] = []
        subtotal = 0
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
            item_id = ids.new()
            category_key = rng.choice(merchant.categories)
            category_id, category_name = CATEGORIES[category_key]
            description, low, high = rng.choice(PRODUCTS[category_key])
            price = rng.randint(low // 100, high // 100) * 100 + 99 if high > low else low
            quantity = 1 if merchant.digital else rng.choice((1, 1, 1, 1, 2, 3))
            subtotal += price * quantity
            returned = not merchant.digital and days_ago > 14 and rng.random() < 0.06
            item_changed = ordered_at + timedelta(minutes=rng.randint(1, 30))
            if returned:
                item_changed = min(ordered_at + timedelta(days=rng.randint(10, 14)), ANCHOR)
            changes.append(item_changed)
            item_records.append(
                (
                    item_id,
                    {
                        "description": description,
                        "price": price,
                        "quantity": quantity,
                        "purchaseDate": ordered_at.date().isoformat(),
                        "category": {
                            "href": f"{api_root}/categories/{category_id}",
                            "name": category_name,
                        },
                        "order": {"href": order_href},
                        "productUrl": f"https://{merchant.slug}.example.com/p/{abs(item_id)}",
                        "imageUrl": f"https://images.example.com/{merchant.slug}/{abs(item_id)}.jpg",
                        "returned": returned,
                        "href": f"{api_root}/items/{item_id}",
                        "updateTime": to_ms(item_changed),
                    },
                )
            )

        shipment_records: list[tuple[int, dict[str, Any]]] = []
        if not merchant.digital:
            parts = 2 if len(item_records) > 1 and rng.random() < 0.25 else 1
            for group in _split(item_records, parts):
                shipment_id = ids.new()
                code = _shipment_state(rng, days_ago)
                shipper = rng.choice(SHIPPERS)
                shipped_at = ordered_at + timedelta(hours=rng.randint(4, 72))
                tracking = None if code == 0 else _tracking_number(rng, shipper)
                if code == 0:
                    changed = ordered_at + timedelta(hours=1)
                elif code == 3:
                    changed = shipped_at + timedelta(days=rng.randint(2, 6))
                else:
                    changed = shipped_at + timedelta(hours=rng.randint(1, 40))
                changed = min(changed, ANCHOR)
                changes.append(changed)
                shipment_records.append(
                    (
                        shipment_id,
                        {
                            "status": {"code": code, "description": SHIPMENT_STATUSES[code]},
                            "shipper": shipper,
                            "trackingNumber": tracking,
                            "trackingUrl": (
                                f"https://tracking.example.com/{shipper.lower()}/{tracking}"
                                if tracking
                                else None
                            ),
                            "shippingDate": None if code == 0 else shipped_at.date().isoformat(),
                            "order": {"href": order_href},
                            "items": [{"href": record["href"]} for _, record in group],
                            "href": f"{api_root}/shipments/{shipment_id}",
                            "updateTime": to_ms(changed),
                        },
                    )
                )

        tax = 0 if merchant.digital else round(subtotal * rng.choice(TAX_RATES))
        shipping = 0 if merchant.digital else rng.choice(SHIPPING_COSTS)
        first_item = item_records[0][1]["description"]
        more = len(item_records) - 1
        title = first_item if not more else f"{first_item} and {more} more item{'s' * (more > 1)}"
        dataset.orders[order_id] = {
            "orderNumber": _digits(rng, merchant.order_number_pattern),
            "orderTitle": title,
            "orderDate": ordered_at.date().isoformat(),
            "orderTotal": subtotal + tax + shipping,
            "orderTax": tax,
            "shippingCost": shipping,
            "merchant": {"href": f"{api_root}/merchants/{merchant.id}", "name": merchant.name},
            "purchaseType": "DIGITAL" if merchant.digital else "PURCHASE",
            "mailbox": {"href": mailbox_href},
            "items": [{"href": record["href"]} for _, record in item_records],
            "shipments": [{"href": record["href"]} for _, record in shipment_records],
            "href": order_href,
            "updateTime": to_ms(max(changes)),
        }
        dataset.items.update(item_records)
        dataset.shipments.update(shipment_records)
    return dataset

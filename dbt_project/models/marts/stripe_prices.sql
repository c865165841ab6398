-- The price book's prices, one row per lookup key: the source of the demo's `prices` sync.
-- A changed amount, currency or interval becomes a new Stripe price under the same lookup key.
select
    lookup_key,
    product_key as product_id,
    lower(currency) as currency,
    cast(unit_amount as bigint) as unit_amount,
    recurring_interval,
    1 as recurring_interval_count,
    nickname,
    plan,
    true as active
from {{ ref('raw_catalog_prices') }}

-- The price book's products, one row per product: the source of the demo's `products` sync.
-- The product key is the Stripe product id itself (Stripe takes your own id on create).
select
    product_key as product_id,
    name,
    description,
    tier,
    unit_label,
    true as active
from {{ ref('raw_catalog_products') }}

select
    user_id,
    email,
    first_name,
    last_name,
    phone,
    street,
    unit,
    city,
    state,
    postal_code,
    country,
    region,
    signup_at,
    updated_at
from {{ ref('raw_users') }}

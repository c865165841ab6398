select
    subscription_id,
    user_id,
    plan,
    status,
    monthly_price,
    started_at,
    canceled_at,
    coalesce(canceled_at, started_at) as changed_at
from {{ ref('raw_subscriptions') }}

-- One row per user: what billing should know about them. The source of the demo's Stripe sync.
with current_subscription as (
    select
        user_id,
        plan,
        changed_at,
        row_number() over (partition by user_id order by started_at desc) as recency
    from {{ ref('stg_subscriptions') }}
    where status = 'active'
),

paid_orders as (
    select
        user_id,
        sum(amount_cents) as paid_cents,
        max(ordered_at) as last_ordered_at
    from {{ ref('stg_orders') }}
    where status = 'paid'
    group by user_id
)

select
    'usr_' || lpad(cast(users.user_id as varchar), 6, '0') as external_id,
    users.email,
    users.first_name || ' ' || users.last_name as full_name,
    users.phone,
    users.street as address_line1,
    users.unit as address_line2,
    users.city,
    users.state,
    users.postal_code,
    users.country,
    users.region,
    coalesce(current_subscription.plan, 'free') as plan,
    cast(coalesce(paid_orders.paid_cents, 0) / 100.0 as decimal(12, 2)) as lifetime_value,
    cast(users.signup_at as date) as signup_date,
    greatest(
        users.updated_at,
        coalesce(current_subscription.changed_at, users.updated_at),
        coalesce(paid_orders.last_ordered_at, users.updated_at)
    ) as updated_at
from {{ ref('stg_users') }} as users
left join current_subscription
    on users.user_id = current_subscription.user_id
    and current_subscription.recency = 1
left join paid_orders
    on users.user_id = paid_orders.user_id

-- API calls per customer and day: the usage the `api_usage` sync bills through a Stripe meter.
select
    users.email,
    cast(current_date - cast(usage.days_ago as integer) as date) as usage_date,
    usage.api_calls
from {{ ref('raw_api_usage') }} as usage
inner join {{ ref('stg_users') }} as users on users.user_id = usage.user_id

-- API calls per customer and day: the usage the `api_usage` sync bills through a Stripe meter.
select
    users.email,
    cast({{ dbt.dateadd('day', '-1 * usage.days_ago', utc_today()) }} as date) as usage_date,
    usage.api_calls
from {{ ref('raw_api_usage') }} as usage
inner join {{ ref('stg_users') }} as users on users.user_id = usage.user_id

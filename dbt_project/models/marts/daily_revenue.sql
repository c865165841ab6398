-- Paid revenue per day. Incremental and partitioned by day in Dagster: each run rebuilds the days
-- in [min_date, max_date), which Dagster passes as --vars from the partition window.
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='order_date',
        tags=['partitioned'],
    )
}}

select
    cast(ordered_at as date) as order_date,
    count(*) as paid_orders,
    cast(sum(amount_cents) / 100.0 as decimal(14, 2)) as revenue
from {{ ref('stg_orders') }}
where status = 'paid'
{% if var('min_date', none) is not none %}
    and ordered_at >= cast('{{ var("min_date") }}' as timestamp)
    and ordered_at < cast('{{ var("max_date") }}' as timestamp)
{% endif %}
group by 1

{#- Today's date in UTC, whatever the warehouse session's time zone: usage is billed by UTC day (a
    meter event's timestamp is the start of its day in UTC), so its days are counted from here. -#}
{% macro utc_today() %}{{ return(adapter.dispatch('utc_today')()) }}{% endmacro %}

{% macro default__utc_today() %}cast(current_timestamp at time zone 'UTC' as date){% endmacro %}

{% macro snowflake__utc_today() %}cast(convert_timezone('UTC', current_timestamp()) as date){% endmacro %}

{% macro bigquery__utc_today() %}current_date('UTC'){% endmacro %}

"""What the time costs: each run's hourly price per device (`--price`, recorded in environment.json)
turned into the cost of an epoch, of the tutorial's job and of reaching the target accuracy
(DAWNBench's cost-to-accuracy). Pure functions over the analysis tables."""
from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["machine", "device", "price_usd_per_hour", "job_s", "job_projected", "job_usd", "epoch_s", "epoch_usd",
           "time_to_target_s", "target_usd"]


def price_for(device: str, prices: dict[str, float]) -> float:
    """A device's hourly price: its own (cuda:1), its kind's (cuda), every device's (*), else NaN."""
    for name in (device, device.split(":")[0], "*"):
        if name in prices:
            return float(prices[name])
    return np.nan


def with_prices(frame: pd.DataFrame, environment: dict) -> pd.DataFrame:
    """A run's rows with the hourly price its environment.json records for each one's device."""
    prices = environment.get("price_usd_per_hour") or {}
    return frame.assign(price_usd_per_hour=[price_for(str(d), prices) for d in frame["device"]])


def prediction_rate(rows: pd.DataFrame) -> pd.Series:
    """The rate a time is predicted from: total images over total time, stalls included (images_per_s_mean), or
    the median over windows for runs that did not record it."""
    median = pd.to_numeric(rows["images_per_s"], errors="coerce")
    if "images_per_s_mean" not in rows:
        return median
    return pd.to_numeric(rows["images_per_s_mean"], errors="coerce").fillna(median)


def cost_table(ok: pd.DataFrame, jobs: pd.DataFrame, best: pd.DataFrame, to_target: pd.DataFrame) -> pd.DataFrame:
    """Per machine and device with a price: the tutorial's job, an epoch at the fastest training
    configuration and the fastest time to the target accuracy, each in USD."""
    if "price_usd_per_hour" not in ok or ok["price_usd_per_hour"].isna().all():
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    for (machine, device), g in ok.dropna(subset=["price_usd_per_hour"]).groupby(["machine", "device"]):
        usd_per_s = g["price_usd_per_hour"].iloc[0] / 3600
        job = jobs[(jobs["machine"] == machine) & (jobs["device"] == device)]
        train = best[(best["machine"] == machine) & (best["device"] == device) & (best["mode"] == "train")
                     & (best["world_size"] == 1)]
        images = g["train_images"].dropna()
        epoch_s = (images.max() / prediction_rate(train).max()) if len(train) and len(images) else np.nan
        target = to_target[(to_target["machine"] == machine) & (to_target["device"] == device)]
        target_s = target["time_to_target_s"].min() if len(target) else np.nan
        job_s = job["job_s"].iloc[0] if len(job) else np.nan
        rows.append({"machine": machine, "device": device, "price_usd_per_hour": usd_per_s * 3600, "job_s": job_s,
                     "job_projected": job["job_projected"].iloc[0] if len(job) else None,
                     "job_usd": job_s * usd_per_s, "epoch_s": epoch_s, "epoch_usd": epoch_s * usd_per_s,
                     "time_to_target_s": target_s, "target_usd": target_s * usd_per_s})
    return pd.DataFrame(rows, columns=COLUMNS)

"""Scoring cost of students with longer reach against the teacher (random weights, the pipeline's timer)."""
import json, sys
import torch
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "../../.."))
from distilrec.config import StudentConfig, TeacherConfig
from distilrec.evaluate import scoring_costs
from distilrec.models import Student, Teacher
torch.set_num_threads(1); torch.manual_seed(0)
N, D = 9724, 384
emb = torch.randn(N, D)
models = {"teacher": Teacher(TeacherConfig(n_items=N, text_dim=D), emb.clone())}
for L in (50, 100, 200):
    models[f"student_len{L}"] = Student(StudentConfig(n_items=N, text_dim=D, max_len=L), emb.clone())
out = scoring_costs(models, runs=int(sys.argv[1]) if len(sys.argv) > 1 else 500)
t = out["teacher"]
for k, v in out.items():
    print(k, json.dumps(v), "teacher/this p50 %.2f p99 %.2f" % (t["score_ms_p50_1000"] / v["score_ms_p50_1000"], t["score_ms_p99_1000"] / v["score_ms_p99_1000"]))

package loraplex_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/loraplex/loraplex/bindings/go/loraplex"
)

// Load a model (configured from the environment, e.g. LPX_MODEL and NIM_PEFT_SOURCE) and
// generate a completion greedily.
func ExampleEngine_Generate() {
	cfg, err := loraplex.ConfigFromEnv()
	if err != nil {
		log.Fatal(err)
	}
	cfg.MaxModelLen = 2048
	engine, err := loraplex.NewEngine(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer engine.Close()

	res, err := engine.Generate(context.Background(), loraplex.Request{
		Model:       "", // the base model; an adapter name selects that adapter
		Messages:    []loraplex.Message{{Role: "user", Content: "What is LoRA?"}},
		MaxTokens:   64,
		Temperature: loraplex.Float32(0),
	})
	switch {
	case errors.Is(err, loraplex.ErrNotFound):
		log.Fatal("no such adapter: ", err)
	case errors.Is(err, loraplex.ErrCapacity):
		log.Fatal("adapter cache full, retry later: ", err)
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println(res.Text, res.FinishReason, res.Usage.CompletionTokens)
}

// Stream deltas by polling, printing each piece of text as it arrives.
func ExampleEngine_Poll() {
	engine, err := loraplex.NewEngine(loraplex.Config{Model: "models/SmolLM2-135M-Instruct.Q4_1.gguf"})
	if err != nil {
		log.Fatal(err)
	}
	defer engine.Close()
	id, err := engine.Submit(loraplex.Request{Prompt: "Once upon a time", MaxTokens: 32})
	if err != nil {
		log.Fatal(err)
	}
	for {
		out, err := engine.Poll(id, 100*time.Millisecond)
		if err != nil {
			log.Fatal(err)
		}
		if out == nil {
			continue // nothing new yet
		}
		fmt.Print(out.Text())
		done := out.IsDone() // the request's last output (with one choice: its final one)
		out.Close()
		if done {
			break
		}
	}
}

// Serve an OpenAI request body and get the OpenAI-shaped response.
func ExampleEngine_SubmitJSON() {
	engine, err := loraplex.NewEngine(loraplex.Config{Model: "models/SmolLM2-135M-Instruct.Q4_1.gguf"})
	if err != nil {
		log.Fatal(err)
	}
	defer engine.Close()
	id, err := engine.SubmitJSON([]byte(`{"messages":[{"role":"user","content":"Hi"}],"max_tokens":16}`))
	if err != nil {
		log.Fatal(err)
	}
	err = engine.Stream(context.Background(), id, func(o *loraplex.Output) error {
		body, err := o.JSON() // non-streamed: one complete chat.completion object
		fmt.Println(string(body))
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
}
